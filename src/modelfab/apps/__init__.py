"""The applications layer: products built on the layers below (the platform's client,
the replica-side model runtime, the recipes' light specs), each application one package.

`inspection/` is the inspection station: images scored through an endpoint into a report,
batch inspection of archives as a job, and the sample data it is shown with.

Applications talk to the platform through `modelfab.client` (or, in a job worker, through
the recipe context) and never import `services`, `db`, `api` or `server`. Nothing below
this layer imports it: the worker reaches an application only through a recipe's
entrypoint string, and `cli` is its shell.
"""
