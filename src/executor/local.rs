//! The local executor: runs agents as subprocesses on this machine.
