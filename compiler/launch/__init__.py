"""The launch stage: running a build's launch command, and the run-folder contract shared with the runtime."""
