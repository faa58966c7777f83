"""Build a tiny random Qwen3-MoE model with a byte-level BPE tokenizer, offline, in seconds.

Its weights are random, so it writes random text: it exists so that the demo and the tests
exercise the real loading, chat template, LoRA and generation code without a download.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the BPE merges are learnt from: SQL and schema vocabulary, so the shipped sample's
# prompts of ~3,000 characters tokenize to well under the model's 8,192 positions.
_CORPUS = """
SELECT DISTINCT T1.name, count(*) FROM customers AS T1 JOIN orders AS T2 ON T1.customer_id = T2.customer_id
WHERE T2.order_status = 'Completed' AND T1.payment_method_code != 'Cash' GROUP BY T1.customer_id
HAVING count(*) > 1 ORDER BY count(*) DESC LIMIT 3; SELECT avg(product_price) , max(age), min(id), sum(amount)
FROM products WHERE product_type_code LIKE '%Clothes%' OR product_name IN (SELECT name FROM staff) UNION
INTERSECT EXCEPT NOT NULL BETWEEN EXISTS CASE WHEN THEN ELSE END CAST AS INTEGER TEXT REAL DATE
CREATE TABLE `Addresses` (
  `address_id` INTEGER,
  `address_details` TEXT,
  PRIMARY KEY (`address_id`),
  FOREIGN KEY (`supplier_id`) REFERENCES `Suppliers`(`supplier_id`)
);
Schema: Question: Answer the question with one SQLite query. Output only SQL. What are the names of the
departments, staff, stores, suppliers, products and customers? Show the address, phone, email, gender and
date from each table. How many orders were placed by each customer, ordered by date?
Beantworte die Frage mit einer einzigen SQLite-Abfrage. Gib nur SQL aus. Frage: Zeige Name, Land und Alter.
"""


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE tokenizer with ChatML special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.splitlines() if line.strip()]
    bpe.train_from_iterator(lines * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
        model_max_length=8192,
    )


def build_tiny_model(directory: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Write a tiny random Qwen3-MoE model and its tokenizer to `directory` (`hidden` and
    `layers` make a bigger one, for benchmarks where the model, not Python, should dominate)."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from prefgen.engines.loading import quiet_transformers

    quiet_transformers()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        moe_intermediate_size=hidden // 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention refuses 16
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3MoeForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
