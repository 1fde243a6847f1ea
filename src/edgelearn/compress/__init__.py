"""Smaller and faster module A: export to ONNX and run on ONNX Runtime (quantisation builds on it)."""

from edgelearn.compress.onnx import OnnxRunner, export_onnx

__all__ = ["OnnxRunner", "export_onnx"]
