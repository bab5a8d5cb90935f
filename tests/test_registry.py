import pytest

from exportable import registry
from exportable.errors import InputError, RecipeNotFound
from exportable.recipe import Recipe


def test_recipes_are_discovered_from_the_recipes_folder():
    assert "sentence_bert" in registry.names()


def test_duplicate_name_raises():
    class One(Recipe):
        name = "dup_demo"

    class Two(Recipe):
        name = "dup_demo"

    registry.register(One)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            registry.register(Two)
    finally:
        registry.unregister("dup_demo")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(RecipeNotFound, match="did you mean sentence_bert"):
        registry.get("sentence_bret")


def test_unknown_option_is_an_input_error():
    with pytest.raises(InputError, match="has no option 'colour'"):
        registry.get("sentence_bert")(colour="red")


def test_choice_option_is_checked():
    with pytest.raises(InputError, match="choose one of"):
        registry.get("sentence_bert")(inputs="pixels")
