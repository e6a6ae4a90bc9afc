#!/bin/sh
# The image's entrypoint (Containerfile): the first argument picks the process.
#   web      gunicorn with /app/gunicorn.conf.py, on 0.0.0.0:$PORT (8000) unless --bind is given
#   worker   the Celery worker          beat   Celery beat (its schedule in $BROKER_DATA_DIR)
#   migrate  manage.py migrate (run it, to completion, before a new version's web and worker)
#   manage   any manage.py command: `manage createsuperuser`, `manage loadproviders FILE`
# Anything else runs as given. Extra arguments go to the chosen command.
set -eu
cd /app
command=${1:-web}
[ $# -gt 0 ] && shift
case "$command" in
  web) exec gunicorn --config /app/gunicorn.conf.py "$@" ;;
  worker) exec celery -A broker worker --loglevel INFO "$@" ;;
  beat) exec celery -A broker beat --loglevel INFO \
          --schedule "${BROKER_DATA_DIR:-/var/lib/broker}/celerybeat-schedule" "$@" ;;
  migrate) exec python manage.py migrate --no-input "$@" ;;
  manage) exec python manage.py "$@" ;;
  *) exec "$command" "$@" ;;
esac
