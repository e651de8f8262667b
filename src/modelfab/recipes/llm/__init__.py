"""The heavy half of the language-model recipes (torch, transformers, peft): imported only
by a worker through a recipe entrypoint. `data` turns a chat dataset into batches,
`finetune` trains on the shared loop, `job` is the `llm-finetune` entrypoint."""
