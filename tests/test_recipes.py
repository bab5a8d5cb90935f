"""Every registered recipe x format exports with parity against its original.

A recipe without an entry here fails `test_every_recipe_has_a_parity_case` (as Optimum's
test_all_models_tested does), so nobody adds a recipe that is never proven.
"""

import pytest

from exportable import api, registry

# recipe -> options used for its parity run (defaults unless a recipe needs a lighter setting)
PARITY_CASES = {
    "sentence_bert": {},
    "token_tagger": {},
    "tf_text_encoder": {},
    "object_detector": {},
    "yolo_nms": {},
    "text_classifier": {},
    "image_classifier": {},
    "text_generator": {},
}


def _recipe_formats():
    return [(name, fmt) for name in registry.names() for fmt in registry.get(name).formats]


def test_every_recipe_has_a_parity_case():
    missing = sorted(set(registry.names()) - set(PARITY_CASES))
    assert not missing, f"recipes without a parity case in tests/test_recipes.py: {missing}"


# Recipes whose dependencies are an optional extra: without it they name the install command
# (tests/test_tf_convert.py checks that), and their parity case cannot run.
EXTRAS = {"tf_text_encoder": ("tensorflow", "tensorflow_text", "tf2onnx")}


def require_extra(name):
    import importlib.util

    missing = [m for m in EXTRAS.get(name, ()) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs the tf extra ({', '.join(missing)} missing): pip install -e '.[tf]'")


@pytest.mark.parametrize("name,fmt", _recipe_formats())
def test_recipe_format_parity(exported, name, fmt):
    require_extra(name)
    options = PARITY_CASES[name]
    formats = ",".join(registry.get(name).formats)  # one export per recipe serves every format
    folder = exported(name, formats, **options)
    key = (name, formats, tuple(sorted(options.items())))
    report = exported.results[key][1].report
    assert report.parity[fmt], "no validation cases ran"
    assert all(r.passed for r in report.parity[fmt]), report.parity[fmt]
    assert api.verify_artifact(folder, [fmt])[fmt]


@pytest.mark.parametrize("name", registry.names())
def test_validation_shapes_differ_from_the_export_example(name):
    """Dynamic axes must be proven at shapes other than the captured one."""
    require_extra(name)
    recipe = registry.get(name)(**PARITY_CASES.get(name, {}))
    for fmt in recipe.formats:
        example = {k: v.shape for k, v in recipe.capture_feed(fmt).items()}
        for case in recipe.validation_cases():
            shapes = {k: v.shape for k, v in recipe.feed(case, fmt).items()}
            assert shapes != example, f"{name} {fmt} case {case.name} has the export example's shapes"
