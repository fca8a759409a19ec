# Stage: data (being written).


def data_targets():
    return []
