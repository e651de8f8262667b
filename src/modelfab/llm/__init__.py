"""Language models: the conversation format (`conversations`, torch-free), chat encoding
with a tokenizer and its template (`encoding`), and model loading and saving (`models`,
torch: workers only)."""
