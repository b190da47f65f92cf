"""The compression engine: turn one trained base model into measured, signed variants.

Torch-heavy; only the coordinator imports it (the agent reads bundles via ``edgefleet.bundle``).
Modules, one job each: ``data`` (digits or the user's data, via ``edgefleet.datasets``),
``train`` (training and distillation loops), ``recipes`` (recipes as data), ``transforms``
(float-to-float compressions),
``quantize`` (fp16 / int8 graphs), ``onnx_export`` (graphs for onnxruntime), ``mcu`` (integer
tensors for the MCU emulator), ``memplan`` (peak activation memory), ``measure`` (metrics),
``variant_store`` (signed bundles on disk + the model index) and ``build`` (the pipeline).
"""
