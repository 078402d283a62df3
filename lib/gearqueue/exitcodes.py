"""Process exit codes, shared by the consumers and the CLI.

systemd units list `CONFIG` in `RestartPreventExitStatus=`: a broken gear.ini is not
fixed by restarting, so the unit stops instead of crash-looping.
"""

OK = 0
#: CLI: the job ran and failed (reply success -1). Consumers never exit with it.
JOB_FAILED = 1
#: Usage or configuration error (argparse also exits 2 on usage errors).
CONFIG = 2
#: CLI: no reply within --timeout.
TIMEOUT = 3
#: CLI: the broker could not be reached.
BROKER_UNAVAILABLE = 4
