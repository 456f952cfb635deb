while True:  # never finishes importing
    pass


def dist_env():
    return 0, 0, 1
