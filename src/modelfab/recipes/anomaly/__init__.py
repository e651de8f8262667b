"""Anomaly detection trained from good parts only (PatchCore), worker side.

`params` (typed params, no torch: the control plane may import it), `inputs` (images to
normalised tensors and tiles), `features` (patch features of a frozen hub backbone),
`coreset` (the bounded memory bank and nearest-neighbour search), `maps` (upsampling,
smoothing, stitching), `calibration` (threshold rules and metrics), `storage` (the saved
folder), and `patchcore` (the detector: fit, score, calibrate, evaluate, save, load).
Nothing here touches jobs, the registry or serving. (Test images with drawn defects and
their masks are the inspection application's: `modelfab.apps.inspection.samples`.)
"""
