"""A 'null' classifier with the served ResNet contract (uint8 [N,3,224,224] -> probabilities [N,1000]) and ~zero
compute: Slice one pixel -> Cast -> Mul(zeros[1,1000]) -> Softmax. Metadata copied from a real cnnserve export, so
the service loads, batches, pickles and answers exactly as for ResNet-50; only onnxruntime's compute is removed.
usage: python null_model.py REAL_EXPORT.onnx OUT.onnx [--store TAG]   (BENTOML_HOME decides the store)"""
import sys, json, numpy as np, onnx
from onnx import TensorProto, helper, numpy_helper
src, out = sys.argv[1], sys.argv[2]
real = onnx.load(src, load_external_data=False)
meta = {p.key: p.value for p in real.metadata_props}
spec = json.loads(meta["cnnserve.spec"])
c, (h, w), k = spec["in_channels"], spec["input_size"], len(spec.get("labels") or []) or spec["num_classes"]
inits = [
    numpy_helper.from_array(np.array([0, 0, 0, 0], np.int64), "starts"),
    numpy_helper.from_array(np.array([2**62, 1, 1, 1], np.int64), "ends"),
    numpy_helper.from_array(np.array([-1, 1], np.int64), "shape"),
    numpy_helper.from_array(np.zeros((1, k), np.float32), "zeros"),
]
nodes = [
    helper.make_node("Slice", ["images", "starts", "ends"], ["px"]),
    helper.make_node("Cast", ["px"], ["pxf"], to=TensorProto.FLOAT),
    helper.make_node("Reshape", ["pxf", "shape"], ["col"]),
    helper.make_node("Mul", ["col", "zeros"], ["logits"]),
    helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
]
g = helper.make_graph(nodes, "null", [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", c, h, w])],
                      [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", k])], inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], producer_name="cnnserve")
m.ir_version = real.ir_version
for key, value in meta.items():
    m.metadata_props.add(key=key, value=value)
onnx.checker.check_model(m)
onnx.save(m, out)
print("wrote", out, "classes", k, "input", (c, h, w))
if "--store" in sys.argv:
    sys.path.insert(0, __import__("os").getcwd())  # run from the repository root
    from pathlib import Path
    from cnnserve.export.store import save_to_store
    tag = sys.argv[sys.argv.index("--store") + 1]
    print("stored", save_to_store(Path(out), name=tag, task=spec["task"], metadata={"model": "null", "precision": meta.get("cnnserve.precision", "fp32"), "input_dtype": "uint8"}))
