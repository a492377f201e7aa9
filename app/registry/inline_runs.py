"""Which graphs are provably cheap whatever a request's values: only those may run inline.

A model that runs on the event loop stalls every other request for as long as a run lasts,
so a request must not be able to make a run long. The warm-up shows how long a run takes on
zeros; what the values of a request can do is read from the graph: every node, in the main
graph, in subgraphs and in model-local functions, must be an operator whose cost is fixed by
its inputs' shapes (an allow-list), and the inputs that give another operator its output's
shape (Reshape's shape, Expand's, Pad's, Resize's sizes, ...) must not depend on the data:
they are constants, or computed from constants and tensor shapes only. Loops, scans,
windows, ranges and anything unknown (custom domains) keep a model off the loop.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

# Operators whose cost follows from the shapes of their inputs (fixed for an inline model:
# every non-batch dimension is, and the batch is bounded).
_ONNX_CHEAP = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Cast CastLike Ceil Celu Clip Concat
    Constant Conv ConvInteger ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div
    Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    GroupNormalization HardSigmoid HardSwish Hardmax Identity InstanceNormalization IsInf IsNaN
    LRN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LpPool
    MatMul MatMulInteger Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg Not Or
    PRelu Pow QLinearConv QLinearMatMul QuantizeLinear Reciprocal ReduceL1 ReduceL2
    ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Round Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
    Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan Tanh ThresholdedRelu TopK Transpose
    Trilu Where Xor
    Reshape Expand Tile Pad Resize Upsample Squeeze Unsqueeze ConstantOfShape OneHot Range
    """.split()
)
_MICROSOFT_CHEAP = frozenset(
    """
    BiasAdd BiasGelu BiasSoftmax DynamicQuantizeMatMul FastGelu FusedConv FusedGemm
    FusedMatMul Gelu LayerNormalization MatMulIntegerToFloat NhwcMaxPool QGemm QLinearAdd
    QLinearAveragePool QLinearConcat QLinearGlobalAveragePool QLinearLeakyRelu QLinearMul
    QLinearSigmoid QuickGelu SimplifiedLayerNormalization SkipLayerNormalization
    """.split()
)
_ML_CHEAP = frozenset(
    """
    ArrayFeatureExtractor Binarizer LinearClassifier LinearRegressor Normalizer Scaler
    TreeEnsembleClassifier TreeEnsembleRegressor
    """.split()
)
_CHEAP = {"": _ONNX_CHEAP, "com.microsoft": _MICROSOFT_CHEAP, "ai.onnx.ml": _ML_CHEAP}
# The inputs (by position) that set the size of an operator's output: they must not depend
# on a request's data.
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Pad": (1, 2, 3),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "ConstantOfShape": (0,),
    "OneHot": (1,),
    "Range": (0, 1, 2),
}
# Operators whose output is a function of their inputs' shapes only, never of their data.
_SHAPE_OF = frozenset({"Shape", "Size"})


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _has_subgraphs(node: onnx.NodeProto) -> bool:
    return any(attr.HasField("g") or attr.graphs for attr in node.attribute)


class _Walk:
    """Checks nodes against the allow-list, tracking which values are static (data-free)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.functions = {(_domain(f.domain), f.name): f for f in model.functions}
        self._entered: set[tuple[str, str]] = set()

    def graph(self, graph: onnx.GraphProto, outer_static: frozenset[str]) -> bool:
        static = set(outer_static) | {t.name for t in graph.initializer}
        static |= {t.values.name for t in graph.sparse_initializer}
        return self.nodes(graph.node, static)

    def nodes(self, nodes: Iterable[onnx.NodeProto], static: set[str]) -> bool:
        for node in nodes:
            if not self.node(node, static):
                return False
            inputs = [name for name in node.input if name]
            if node.op_type in _SHAPE_OF or all(name in static for name in inputs):
                static.update(node.output)
        return True

    def node(self, node: onnx.NodeProto, static: set[str]) -> bool:
        key = (_domain(node.domain), node.op_type)
        function = self.functions.get(key)
        if function is not None:
            if key in self._entered:
                return False  # a function that calls itself: nothing is provable
            self._entered.add(key)
            try:
                # A function's own inputs are data as far as it can tell.
                return self.nodes(function.node, set())
            finally:
                self._entered.discard(key)
        if node.op_type == "If" and key[0] == "":
            branches = [attr.g for attr in node.attribute if attr.HasField("g")]
            return all(self.graph(branch, frozenset(static)) for branch in branches)
        if node.op_type not in _CHEAP.get(key[0], frozenset()) or _has_subgraphs(node):
            return False
        for index in _SHAPE_INPUTS.get(node.op_type, ()):
            if index < len(node.input) and node.input[index] and node.input[index] not in static:
                return False
        return True


def provably_cheap(model: onnx.ModelProto) -> bool:
    """Whether no request's values can make a run of ``model`` cost more than its shapes do."""
    return _Walk(model).graph(model.graph, frozenset())
