while True:  # never finishes importing
    pass


def dist_env():
    return 0, 0, 1


def global_mean(t):
    return t


def gather_all(t):
    return [t]
