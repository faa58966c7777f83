"""Step 'judge', its execution part: normalize, run SQL safely, compare results, in worker processes."""
