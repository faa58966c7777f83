import pytest

from prefgen.flow.extract import extract_sql


@pytest.mark.parametrize(
    "answer, sql",
    [
        ("SELECT 1", "SELECT 1"),
        ("  SELECT name FROM t;\n", "SELECT name FROM t;"),
        ("Here:\n```sql\nSELECT a FROM b\n```\nDone.", "SELECT a FROM b"),
        ("```SQL\nSELECT a\n```", "SELECT a"),
        ("```python\nprint(1)\n```\n```sql\nSELECT 2\n```", "SELECT 2"),
        ("```\nSELECT 3\n```", "SELECT 3"),
        ("<think>maybe SELECT x?</think>\n```sql\nSELECT y\n```", "SELECT y"),
        ("<think>long thought</think>SELECT z", "SELECT z"),
        ("<think>never closed because max tokens ran out", ""),
        ("```sql\nSELECT cut off", "SELECT cut off"),
        ("", ""),
        ("   \n ", ""),
        ("```sql\n```", ""),
    ],
)
def test_extract_sql(answer, sql):
    assert extract_sql(answer) == sql
