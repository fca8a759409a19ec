# Stage: inference (being written).


def inference_targets():
    return []
