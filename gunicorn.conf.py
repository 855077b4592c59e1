# Read by gunicorn by itself from the folder it starts in: `gunicorn 'suki_relay.wsgi:app'`.
# It hands each worker's background parts (delivery, the spool's drain, recovery, the
# watchdogs, the log writer) to gunicorn's hooks, which start and stop them in order, as
# `suki-relay serve` does. Plain gunicorn works without this file too; `--preload` needs
# it. Add gunicorn settings of your own below (https://docs.gunicorn.org/en/stable/settings.html).
from suki_relay.serve import hooks

hooks.master()  # in gunicorn's master: what its workers share (metrics, the last good config)
post_fork = hooks.post_fork
post_worker_init = hooks.post_worker_init
worker_exit = hooks.worker_exit
child_exit = hooks.child_exit
