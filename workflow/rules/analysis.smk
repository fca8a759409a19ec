# Stage: analysis (being written).


def analysis_targets():
    return []
