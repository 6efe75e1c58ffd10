def run(run):
    raise NotImplementedError("ppo")
