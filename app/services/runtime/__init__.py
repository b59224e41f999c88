"""Where user code runs: the sandbox and its privileged launcher, cgroups, the start-up self-test, the broker, GPUs, Caffe's build and the workers' registry."""
