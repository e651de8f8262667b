"""The wire format: pydantic models of every request body and answer of the REST API, one
module per noun. The routers return them as-is, the SDK (`modelfab.Client`) parses answers
into them and the CLI prints them, so OpenAPI documents every answer and no side re-declares
a constant (the shared ones are in `limits`).

This package imports nothing of modelfab but `ids`-level leaves: every layer may use it.
"""
