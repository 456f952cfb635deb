def dist_environment():
    return 0, 0, 1
