"""Input pipelines: seqio feature conversion to model batches and the checkpointable batch iterator.

This package is the only place that imports TensorFlow and seqio; import its modules
(`adaptation.data.features`, `adaptation.data.iterator`) explicitly where needed.
"""
