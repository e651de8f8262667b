"""The inspection station: images of parts scored by a deployed model (an anomaly
detector or a classifier) into what a quality engineer reads.

- `scoring.py`: files through an endpoint over `modelfab.client`, in concurrent batches,
  with back-off on 429 and unreadable files isolated as error rows; where the report and
  CSV go, the JSON answer (`modelfab inspect` is its shell);
- `report.py`: heatmap decoding, thumbnails and overlays, the HTML report and the CSV;
- `batch/`: batch inspection of an archive as a job (the `batch-inspection` recipe's work):
  sources, decode, pipeline, journal, summary, the entrypoint `batch.job:run`;
- `samples.py`: sample data from real textures with drawn defects and their masks
  (quickstart, benchmarks, tests).

Torch-free. Never imports `services`, `db`, `api` or `server`.
"""
