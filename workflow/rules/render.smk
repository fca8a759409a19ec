# Stage: render (being written).


def render_targets():
    return []
