"""Generation: tokenizer, chat format, sampling and the generate loop."""
