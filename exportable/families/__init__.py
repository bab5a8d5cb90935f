"""Families: base classes that hold what recipes of one kind share (inputs, synthetic validation
data, weights, preprocessing, heads), so that a recipe declares only what makes it different.
Nothing here is registered: a recipe in recipes/ subclasses a family and registers itself."""
