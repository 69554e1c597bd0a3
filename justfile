# The project's commands, one recipe each (run with `just <recipe>`, or copy the line: every
# recipe is one script or cargo command).

# The local demo, end to end (installs what it needs)
demo *ARGS:
    scripts/demo.sh {{ARGS}}

# The whole test suite, as CI runs it (installs what it needs)
test *ARGS:
    scripts/test.sh {{ARGS}}

# What CI runs: fmt, clippy, the tests, the soak's short form, infra lint, supply chain, ldd
ci:
    bash .ci/run

# The benchmark: queue-worker against sqs-consumer, loopback and 0/20/40 ms round trips
bench *ARGS:
    scripts/bench.sh {{ARGS}}

# The long soak (100,000 messages by default; --messages 1000000 for the long one)
soak *ARGS:
    scripts/soak.sh {{ARGS}}

# Yielding to ECS under load: five changes through local-ecs, with their figures
yield-check:
    scripts/yield-check.sh

# Lint the deployment files (cfn-lint, checkov, cdk-nag, hadolint, shellcheck, IAM actions)
lint-infra:
    scripts/lint-infra.sh

# Licences, bans, sources and advisories of the dependency tree
supply-chain:
    scripts/supply-chain.sh

# fauxqs on a free port in the background (start | stop | status)
fauxqs CMD:
    scripts/fauxqs.sh {{CMD}}

# Deploy with Copilot; send test messages; scale to zero and watch
deploy:
    scripts/deploy.sh
send *ARGS:
    scripts/send-messages.sh {{ARGS}}
scale-to-zero:
    scripts/scale-to-zero.sh

# Deploy the CloudFormation stack without Copilot
deploy-cfn *ARGS:
    scripts/deploy-cfn.sh {{ARGS}}

# The library's documentation
doc:
    cargo doc --no-deps -p queue-worker --open
