"""ONNX export of a model artifact: graph.py builds the graphs, onnx.py writes and checks them."""
