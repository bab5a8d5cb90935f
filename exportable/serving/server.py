"""placeholder"""


def serve(*args, **kwargs):
    raise NotImplementedError
