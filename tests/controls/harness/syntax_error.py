def dist_env(:
    return 0
