"""Batch inspection, the work of the `batch-inspection` recipe (its params and spec are in
`modelfab.recipes.batch_inspection`): a registered model over a folder (or a list file) of
images of any size, results streamed to Parquet or CSV, resumable. Runs in a job worker.

- `sources.py`: the input paths (a sorted recursive walk, or a list file), streamed;
- `decode.py`: one file -> its size and the model's input units, or the reason it failed;
- `pipeline.py`: decode and post-process in a thread pool around the ONNX runs, progress;
- `journal.py`: the output folder: manifest, lock, atomic parts, the final merge;
- `summary.py`: summary.json and the HTML report of the top-scoring images;
- `job.py`: the entrypoint `run(ctx, params)`.

Torch-free: numpy, Pillow, ONNX Runtime and pyarrow only.
"""
