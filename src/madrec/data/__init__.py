"""Stage 1, data: raw interactions and item texts -> a prepared folder of leave-one-out splits.

`prepare` writes it (`madrec prepare-data`), `dataset` reads it back (`load_dataset`),
`tfrecord` is the GZIP TFRecord format both use.
"""
