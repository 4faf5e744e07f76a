"""Build, push and deploy the worker to RunPod serverless: `python -m infra.deploy COMMAND`.

    python -m infra.deploy build                          # docker buildx build --load, tags <version>, <version>-<sha>
    python -m infra.deploy push                           # docker login, then docker buildx build --push
    python -m infra.deploy deploy --env staging [--dry-run] [--tag TAG]
    python -m infra.deploy rollback --env staging [--to TAG] [--dry-run]
    python -m infra.deploy smoke --env staging [--input test_input.json]

`deploy` creates or updates the environment's template and endpoint (infra/deploy.yaml) to run the image
tagged TAG (default `<version>-<git sha>`, what `push` pushed), printing the plan first; a second run with
nothing changed sends nothing. `rollback` deploys the image that ran before (recorded in the template), or
`--to TAG`. `--dry-run` prints the plan and changes nothing. Environment: RUNPOD_API_KEY; REGISTRY,
REGISTRY_USERNAME, REGISTRY_PASSWORD for `push`. Any failure prints one line and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import image, plan, resources, runpod_api, smoke
from .console import redact, say
from .errors import DeployError
from .settings import DEFAULT_CONFIG, Settings, load

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        args.run(args, load(args.config))
    except DeployError as error:
        sys.exit(redact(f"error: {error}"))


def build(args, settings: Settings) -> None:
    refs = image.build(settings.image, push=args.command == "push", dry_run=args.dry_run)
    say(f"{'would push' if args.dry_run else 'pushed' if args.command == 'push' else 'built'}: {', '.join(refs)}")


def deploy(args, settings: Settings) -> None:
    environment = settings.environment(args.env)
    offline = args.dry_run and not os.environ.get("RUNPOD_API_KEY") and args.command == "deploy"
    api = None if offline else _rest_api()
    template, endpoint = plan.current_state(api, environment)
    if args.command == "deploy":
        target = settings.image.ref(args.tag or image.release_tag())
    elif args.to:
        target = settings.image.ref(args.to)
    else:
        target = resources.previous_image(template, environment.template["name"])
    running = template.get("imageName") if template else None
    say(f"{args.command} {environment.name}: image {target} (running now: {running or 'nothing'})")
    if offline:
        say("RUNPOD_API_KEY is not set: the settings in full, not compared with what RunPod holds")
    the_plan = plan.make_plan(environment, target, template, endpoint)
    for line in the_plan.describe():
        say(line)
    if args.dry_run or not the_plan.changes_anything:
        say("dry run: nothing was changed" if args.dry_run else "nothing to change")
        return
    endpoint_id = the_plan.apply(api)
    say(f"done: endpoint {environment.endpoint['name']} is {endpoint_id}")
    if running and running != target:
        say(f"previous image: {running} (make rollback ENV={environment.name} goes back to it)")


def smoke_test(args, settings: Settings) -> None:
    environment = settings.environment(args.env)
    job = smoke.read_job(args.input)
    _, endpoint = plan.current_state(_rest_api(), environment)
    if endpoint is None:
        raise DeployError(f"smoke test: no endpoint named {environment.endpoint['name']}: deploy first")
    say(f"smoke test: {args.input.name} on endpoint {environment.endpoint['name']} ({endpoint['id']})")
    api = runpod_api.from_environment("RUNPOD_SERVERLESS_URL", runpod_api.SERVERLESS_URL, timeout=150)
    say(f"smoke test passed: {smoke.run_smoke_test(api, endpoint['id'], job, timeout_s=args.timeout)}")


def _rest_api() -> runpod_api.RunPodApi:
    return runpod_api.from_environment("RUNPOD_REST_URL", runpod_api.REST_URL)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.deploy", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="deployment settings (YAML)")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run, help: str, env: bool = True, dry_run: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(run=run)
        if env:
            sub.add_argument("--env", required=True, help="an environment of the settings file")
        if dry_run:
            sub.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
        return sub

    command("build", build, "build the image locally", env=False)
    command("push", build, "log in to the registry, build and push the image", env=False)
    command("deploy", deploy, "create or update the template and endpoint").add_argument(
        "--tag", help="the image tag to deploy (default: <version>-<git sha>)")
    command("rollback", deploy, "deploy the previous image again").add_argument(
        "--to", metavar="TAG", help="the image tag to go back to (default: the one deployed before)")
    sub = command("smoke", smoke_test, "run the test job on the endpoint and check the answer", dry_run=False)
    sub.add_argument("--input", type=Path, default=REPO_ROOT / "test_input.json", help="the job file")
    sub.add_argument("--timeout", type=float, default=600, help="seconds to wait for the job (cold starts included)")
    return parser


if __name__ == "__main__":
    main()
