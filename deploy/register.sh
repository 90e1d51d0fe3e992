#!/bin/sh
# Register the two example workers as one model, through the load balancer.
set -eu
for worker in echo-a echo-b; do
  until curl -fsS -X POST http://nginx:8080/api/server/register \
      -H 'Content-Type: application/json' \
      -d "{\"model_name\": \"echo\", \"preset\": \"openai\",
           \"req_url_template\": \"http://$worker:8000/v1\",
           \"health_url\": \"http://$worker:8000/health\", \"replace\": true}"; do
    sleep 1
  done
  echo
done
