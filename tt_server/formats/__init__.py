"""What a model artifact is: format detection, safe unpacking, the safety scans, inspection (the signature an
upload is stored with), per-format loading, and the dtype table.

Registry, runtime, training, jobs and the transports depend on this package; it depends on none of them. Its
errors name the upload's domain arguments, as ``Registry.upload`` takes them: ``artifact`` (the bytes) and
``spec.*`` (the ``UploadSpec``: ``spec.format``, ``spec.frozen_graph.inputs[0]``); each transport moves them onto
its own request's fields.
Modules that need TensorFlow import it on first use or at their own import, never here: importing the package
stays cheap.
"""
