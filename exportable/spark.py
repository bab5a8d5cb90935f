"""Spark: an artifact as a pandas UDF, `exportable.spark.predict_udf(artifact_dir)`.

    from exportable.spark import predict_udf
    embed = predict_udf("artifacts/sentence_bert", batch_size=64)
    df.withColumn("out", embed("text")).select("out.sentence_embedding")

Built on pyspark.ml.functions.predict_batch_udf: each Python worker loads the artifact once
(one ONNX Runtime session) and is fed Arrow batches of `batch_size` rows; the UDF returns a
struct with one field per artifact output. Inputs are passed as columns in the artifact's input
order. Untested here: pyspark 4.3.0 is an sdist of ~435 MiB and requires pandas < 3 (Ray Data's
environment has pandas 3), so it is not part of any extra; install pyspark yourself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import api
from .errors import MissingDependency

SPARK_TYPES = {"tensor(float)": "FloatType", "tensor(double)": "DoubleType", "tensor(int64)": "LongType",
               "tensor(int32)": "IntegerType", "tensor(uint8)": "IntegerType", "tensor(bool)": "BooleanType",
               "tensor(string)": "StringType"}


def _return_type(runner):
    """A Spark struct with one field per output; per-row shape = the output's shape without batch."""
    from pyspark.sql import types  # noqa: PLC0415  (pyspark is optional, see the module docstring)

    fields = []
    meta = {o.name: o for o in runner.session.get_outputs()}
    for name in runner.output_names:
        spark_type = getattr(types, SPARK_TYPES[meta[name].type])()
        for _ in meta[name].shape[1:]:
            spark_type = types.ArrayType(spark_type)
        fields.append(types.StructField(name, spark_type))
    return types.StructType(fields)


def predict_udf(artifact_dir: str | Path, batch_size: int = 64, threads: int = 1):
    try:
        from pyspark.ml.functions import predict_batch_udf  # noqa: PLC0415  (pyspark is optional)
    except ImportError:
        raise MissingDependency("exportable.spark needs pyspark (pip install pyspark, with pandas < 3)") from None
    artifact = str(Path(artifact_dir).resolve())
    runner = api.load_artifact(artifact, threads=threads)

    def make_predict_fn():
        local = api.load_artifact(artifact, threads=threads)  # once per Python worker
        names = list(local.input_specs)

        def predict(*columns: np.ndarray):
            feed = {n: (c.astype(object) if local.input_specs[n][0] == "string" else
                        c.astype(local.input_specs[n][0])) for n, c in zip(names, columns)}
            return local.run(feed)

        return predict

    return predict_batch_udf(make_predict_fn, return_type=_return_type(runner), batch_size=batch_size)
