"""The `modelfab` command line: one verb group per noun, run through `main(argv)`."""
