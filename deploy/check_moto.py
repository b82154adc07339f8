#!/usr/bin/env python3
"""Deploys deploy/peerless.yaml on moto's CloudFormation and checks what moto creates.

Run by scripts/check-stack.sh with the venv's Python (boto3 and moto[server] installed).
Starts its own moto server on a free loopback port, uploads stand-in artifacts (zips holding
a `bootstrap` script, a fake peer binary and its SHA256SUMS) to an artifact bucket, creates
the stack without the Amazon MQ broker (CreateBroker=false: moto has no Amazon MQ and no
Secrets Manager resource in CloudFormation), and checks:

- every output a peer needs, and the resources behind them (bucket, functions, state
  machine, roles, launch template, Auto Scaling group with PeerCount instances);
- both functions: provided.al2023, handler bootstrap, the architecture, memory and timeout
  asked for, the zip for that architecture, PEERLESS_ALLOWED_STORE = the run's store;
- the state machine definition: valid JSON naming the stack's functions, the same as
  `peerless stepfn generate` prints when PEERLESS_BIN names a peerless binary, valid for
  asl-validator when ASL_VALIDATOR names one, and executable by moto (Lambda tasks answer
  with queued stand-in responses);
- the roles: functions limited to the run's prefix, process_input without store access,
  peers invoking only compute_gradient and starting only this state machine;
- the peers' user data: valid bash (`bash -n`), running `peerless peer --rank auto`;
- a stack update from PeerCount 2 to 4, a Graviton/arm64/record variant, and deletion.

Exit status 0 when every check passed; prints one line per check.

`check_moto.py deploy --endpoint URL` instead only deploys the stack on a moto server that
is already running and prints its outputs and functions as JSON (see `deploy`), for
peer/tests/stack.rs, which trains against the deployed stack.
"""

import ast
import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile

import boto3
import botocore.exceptions

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "peerless.yaml")
REGION = "us-east-1"
ARTIFACTS = "peerless-artifacts"
PREFIX = "peerless/"
BROKER = "amqp://guest:guest@127.0.0.1:5672/%2f"

passed = 0
failed = 0
gaps = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok    {name}")
    else:
        failed += 1
        print(f"FAIL  {name}{': ' + str(detail) if detail else ''}")
    return ok


def moto_gap(name, seen):
    """A check that moto cannot pass although the template is right: printed, not failed.
    deploy/README.md lists these gaps."""
    global gaps
    gaps += 1
    print(f"gap   {name} (moto: {seen})")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto():
    port = free_port()
    log = open(os.path.join(tempfile.gettempdir(), f"peerless-moto-{port}.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        sys.exit(f"moto did not start on {url}")
    return proc, url


def post(url, body):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return urllib.request.urlopen(req, timeout=10).status


def zip_with_bootstrap():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("bootstrap")
        info.external_attr = 0o755 << 16
        z.writestr(info, "#!/bin/sh\necho stand-in\n")
    return buf.getvalue()


def upload_artifacts(s3):
    s3.create_bucket(Bucket=ARTIFACTS)
    sums = []
    for name in ("peerless-x86_64-linux", "peerless-aarch64-linux"):
        data = f"stand-in {name}\n".encode()
        s3.put_object(Bucket=ARTIFACTS, Key=PREFIX + name, Body=data)
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}")
    for name in (
        "compute_gradient.zip",
        "process_input.zip",
        "compute_gradient-arm64.zip",
        "process_input-arm64.zip",
    ):
        s3.put_object(Bucket=ARTIFACTS, Key=PREFIX + name, Body=zip_with_bootstrap())
    s3.put_object(Bucket=ARTIFACTS, Key=PREFIX + "SHA256SUMS", Body="\n".join(sums) + "\n")


def create(cf, name, **params):
    params = {"ArtifactBucket": ARTIFACTS, "ArtifactPrefix": PREFIX, **params}
    cf.create_stack(
        StackName=name,
        TemplateBody=open(TEMPLATE).read(),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()],
    )
    cf.get_waiter("stack_create_complete").wait(StackName=name, WaiterConfig={"Delay": 1})
    return outputs(cf, name)


def outputs(cf, name):
    stack = cf.describe_stacks(StackName=name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def fn_name(arn):
    """The function name of a Lambda ARN (moto's GetFunction takes names, not ARNs)."""
    return arn.split(":function:", 1)[-1]


def role_statements(iam, role_arn):
    role = role_arn.rsplit("/", 1)[1]
    out = []
    for policy in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        doc = iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
        if isinstance(doc, str):
            # moto keeps CloudFormation's inline policies as a Python repr, AWS as JSON.
            doc = json.loads(doc) if doc.lstrip().startswith('{"') else ast.literal_eval(doc)
        statements = doc["Statement"]
        out.extend(statements if isinstance(statements, list) else [statements])
    return out


def actions_on(statements):
    """{action: [resources]} of the Allow statements."""
    found = {}
    for s in statements:
        # moto leaves an AWS::NoValue list item as null; AWS drops it.
        if s is None or s.get("Effect") != "Allow":
            continue
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
        for a in actions:
            found.setdefault(a, []).extend(resources)
    return found


def user_data(ec2, template_id):
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=template_id)
    latest = max(versions["LaunchTemplateVersions"], key=lambda v: v["VersionNumber"])
    return base64.b64decode(latest["LaunchTemplateData"]["UserData"]).decode()


def generated_definition(out, arn_pi, arn_cg, batches, on_failure):
    """What `peerless stepfn generate` prints for the same options, or None without a binary."""
    binary = os.environ.get("PEERLESS_BIN")
    if not binary:
        return None
    cmd = [
        binary,
        "stepfn",
        "generate",
        "--batches",
        str(batches),
        "--process-input-arn",
        arn_pi,
        "--compute-gradient-arn",
        arn_cg,
        "--on-failure",
        on_failure,
    ]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def make_executable(url, sfn, iam, out):
    """Turns on moto's executing Step Functions and registers the stack's state machine
    there: moto keeps what its CloudFormation creates apart from what its executing backend
    sees, so the definition CloudFormation stored is created again, under the same name
    (hence the same ARN), with the stack's peer role. Returns the ARN it got."""
    definition = sfn.describe_state_machine(stateMachineArn=out["StateMachineArn"])["definition"]
    post(url + "/moto-api/config", {"stepfunctions": {"execute_state_machine": True}})
    role = iam.get_role(RoleName=out["PeerRoleArn"].rsplit("/", 1)[1])["Role"]["Arn"]
    made = sfn.create_state_machine(
        name=out["StateMachineArn"].rsplit(":", 1)[1], definition=definition, roleArn=role
    )
    return made["stateMachineArn"]


def check_stack(clients, name, out, params):
    cf, s3, lam, sfn, iam, ec2, asg = clients
    arch = params.get("LambdaArchitecture", "x86_64")
    needed = [
        "RunBucketName",
        "StoreUrl",
        "RunId",
        "ComputeGradientFunctionArn",
        "ProcessInputFunctionArn",
        "StateMachineArn",
        "ComputeGradientLogGroup",
        "ProcessInputLogGroup",
        "PeerRoleArn",
        "PeerLaunchTemplateId",
        "VpcId",
        "SubnetId",
    ]
    missing = [k for k in needed if k not in out]
    check(f"{name}: outputs {', '.join(needed)}", not missing, f"missing {missing}")
    store = out.get("StoreUrl", "")
    check(
        f"{name}: store is s3://<bucket>/runs/<run>",
        store == f"s3://{out.get('RunBucketName')}/runs/{params.get('RunName', 'study1')}",
        store,
    )
    check(f"{name}: run bucket exists", out.get("RunBucketName") in
          [b["Name"] for b in s3.list_buckets()["Buckets"]])

    suffix = "-arm64" if arch == "arm64" else ""
    for fn, memory, zip_name in (
        ("ComputeGradientFunctionArn", int(params.get("LambdaMemory", 2048)), "compute_gradient"),
        ("ProcessInputFunctionArn", 128, "process_input"),
    ):
        f = lam.get_function(FunctionName=fn_name(out[fn]))
        c = f["Configuration"]
        check(
            f"{name}: {zip_name} is provided.al2023/bootstrap/{memory} MB",
            (c["Runtime"], c["Handler"], c["MemorySize"])
            == ("provided.al2023", "bootstrap", memory),
            (c["Runtime"], c["Handler"], c["MemorySize"]),
        )
        if c.get("Architectures") == [arch]:
            check(f"{name}: {zip_name} runs on {arch}", True)
        else:
            moto_gap(f"{name}: {zip_name} runs on {arch}",
                     f"its CloudFormation drops Architectures, the function says {c.get('Architectures')}")
        location = f.get("Code", {}).get("Location", "")
        want_zip = zip_with_bootstrap()
        check(f"{name}: {zip_name} deployed from {zip_name}{suffix}.zip",
              c.get("CodeSize") == len(want_zip) or f"{zip_name}{suffix}.zip" in location,
              (c.get("CodeSize"), location))
        if zip_name == "compute_gradient":
            env = c.get("Environment", {}).get("Variables", {})
            check(f"{name}: PEERLESS_ALLOWED_STORE is the run's store",
                  env.get("PEERLESS_ALLOWED_STORE") == store, env)
            check(f"{name}: compute_gradient timeout",
                  c["Timeout"] == int(params.get("FunctionTimeout", 300)), c["Timeout"])

    definition_text = sfn.describe_state_machine(stateMachineArn=out["StateMachineArn"])["definition"]
    try:
        definition = json.loads(definition_text)
    except ValueError as e:
        check(f"{name}: state machine definition is JSON", False, e)
        return
    states = definition["States"]
    inner = states["ComputeGradients"]["ItemProcessor"]["States"]
    check(
        f"{name}: state machine tasks are this stack's functions",
        states["ProcessInput"]["Resource"] == out["ProcessInputFunctionArn"]
        and inner["ComputeGradient"]["Resource"] == out["ComputeGradientFunctionArn"],
    )
    batches = int(params.get("BatchesPerPeer", 8))
    on_failure = params.get("StepOnFailure", "fail")
    check(
        f"{name}: Map concurrency K={batches}, failed batches {on_failure}",
        states["ComputeGradients"]["MaxConcurrency"] == batches
        and inner["BatchFailed"]["Type"] == ("Pass" if on_failure == "record" else "Fail"),
    )
    generated = generated_definition(
        out, out["ProcessInputFunctionArn"], out["ComputeGradientFunctionArn"], batches, on_failure
    )
    if generated is None:
        print(f"skip  {name}: same as `peerless stepfn generate` (set PEERLESS_BIN)")
    else:
        check(f"{name}: same as `peerless stepfn generate`", generated == definition,
              json.dumps(generated, sort_keys=True))
    validator = os.environ.get("ASL_VALIDATOR")
    if validator and os.access(validator, os.X_OK):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(definition_text)
        r = subprocess.run([validator, "--json-path", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        check(f"{name}: asl-validator accepts the definition", r.returncode == 0, r.stdout + r.stderr)
    else:
        print(f"skip  {name}: asl-validator (set ASL_VALIDATOR)")

    cg = actions_on(role_statements(iam, lam.get_function(
        FunctionName=fn_name(out["ComputeGradientFunctionArn"]))["Configuration"]["Role"]))
    bucket_arn = f"arn:aws:s3:::{out['RunBucketName']}"
    run = params.get("RunName", "study1")
    check(
        f"{name}: compute_gradient reads runs/{run}/* and writes runs/{run}/exchange/* only",
        cg.get("s3:GetObject") == [f"{bucket_arn}/runs/{run}/*"]
        and cg.get("s3:PutObject") == [f"{bucket_arn}/runs/{run}/exchange/*"]
        and cg.get("s3:ListBucket") == [bucket_arn]
        and not any(a.startswith("s3:") and a not in ("s3:GetObject", "s3:PutObject", "s3:ListBucket") for a in cg),
        cg,
    )
    pi = actions_on(role_statements(iam, lam.get_function(
        FunctionName=fn_name(out["ProcessInputFunctionArn"]))["Configuration"]["Role"]))
    check(f"{name}: process_input has no store access", not any(a.startswith("s3:") for a in pi), pi)
    peer = actions_on(role_statements(iam, out["PeerRoleArn"]))
    check(
        f"{name}: peers invoke only compute_gradient and start only this state machine",
        peer.get("lambda:InvokeFunction") == [out["ComputeGradientFunctionArn"]]
        and peer.get("states:StartExecution") == [out["StateMachineArn"]],
        peer,
    )
    check(
        f"{name}: peers read, write and delete runs/{run}/* only in the run bucket",
        all(peer.get(a) == [f"{bucket_arn}/runs/{run}/*"]
            for a in ("s3:PutObject", "s3:DeleteObject")),
        peer,
    )

    script = user_data(ec2, out["PeerLaunchTemplateId"])
    r = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    check(f"{name}: user data is valid bash", r.returncode == 0, r.stderr)
    binary = "peerless-aarch64-linux" if params.get("InstanceType", "t3.medium")[2:3] == "g" else "peerless-x86_64-linux"
    check(
        f"{name}: user data downloads {binary} and runs peerless peer --rank auto",
        f"BINARY='{binary}'" in script and "./peerless peer --rank auto" in script
        and f"PEERLESS_STORE=\"$STORE\"" in script and store.split("/", 3)[3] in script,
    )
    return script


def main():
    proc, url = start_moto()
    try:
        session = boto3.session.Session(
            aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
        )
        c = lambda svc: session.client(svc, endpoint_url=url)  # noqa: E731
        cf, s3, lam, sfn = c("cloudformation"), c("s3"), c("lambda"), c("stepfunctions")
        iam, ec2, asg = c("iam"), c("ec2"), c("autoscaling")
        clients = (cf, s3, lam, sfn, iam, ec2, asg)
        upload_artifacts(s3)

        # 1. The default stack without the broker, two peers.
        params = {"CreateBroker": "false", "ExternalBrokerUrl": BROKER, "PeerCount": 2}
        out = create(cf, "peerless-a", **params)
        script = check_stack(clients, "peerless-a", out, params)
        check("peerless-a: no broker outputs without the broker",
              not any(k.startswith("Broker") for k in out), out)
        check("peerless-a: user data uses ExternalBrokerUrl", f"PEERLESS_BROKER='{BROKER}'" in (script or ""))
        group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[out["PeerGroupName"]])
        g = group["AutoScalingGroups"][0]
        check("peerless-a: Auto Scaling group runs 2 peers",
              (g["DesiredCapacity"], len(g["Instances"])) == (2, 2),
              (g["DesiredCapacity"], len(g["Instances"])))

        # A round through the state machine as moto executes it (make_executable), both
        # functions answering with queued stand-ins from moto's Docker-free Lambda (moto
        # runs no function code; peer/tests/stack.rs runs the real ones).
        post(url + "/moto-api/config", {"lambda": {"use_docker": False}})
        try:
            made = make_executable(url, sfn, iam, out)
            check("peerless-a: the executing backend takes the definition under the same ARN",
                  made == out["StateMachineArn"], made)
            events = [{"batch": b, "gradient_key": f"g{b}"} for b in range(2)]
            answers = [json.dumps({"events": events})] + [json.dumps({"batch": b}) for b in range(2)]
            post(url + "/moto-api/static/lambda-simple/response", {"results": answers, "region": REGION})
            ex = sfn.start_execution(stateMachineArn=made,
                                     input=json.dumps({"batch_count": 2}))
            for _ in range(100):
                d = sfn.describe_execution(executionArn=ex["executionArn"])
                if d["status"] != "RUNNING":
                    break
                time.sleep(0.1)
        finally:
            post(url + "/moto-api/config",
                 {"stepfunctions": {"execute_state_machine": False}, "lambda": {"use_docker": True}})
        results = json.loads(d.get("output") or "null")
        check("peerless-a: moto executes the state machine (2 batches through the Map state)",
              d["status"] == "SUCCEEDED" and isinstance(results, list) and len(results) == 2,
              (d["status"], d.get("output"), d.get("error"), d.get("cause")))

        # 2. The runbook's update: more peers.
        cf.update_stack(
            StackName="peerless-a",
            UsePreviousTemplate=True,
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[
                {"ParameterKey": "CreateBroker", "ParameterValue": "false"},
                {"ParameterKey": "ExternalBrokerUrl", "ParameterValue": BROKER},
                {"ParameterKey": "PeerCount", "ParameterValue": "4"},
                {"ParameterKey": "ArtifactBucket", "ParameterValue": ARTIFACTS},
            ],
        )
        cf.get_waiter("stack_update_complete").wait(StackName="peerless-a", WaiterConfig={"Delay": 1})
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[out["PeerGroupName"]])["AutoScalingGroups"][0]
        check("peerless-a: update to PeerCount 4 runs 4 peers",
              (g["DesiredCapacity"], len(g["Instances"])) == (4, 4),
              (g["DesiredCapacity"], len(g["Instances"])))
        if "PEERLESS_SIZE='4'" in user_data(ec2, out["PeerLaunchTemplateId"]):
            check("peerless-a: updated launch template says --size 4", True)
        else:
            moto_gap("peerless-a: updated launch template says --size 4",
                     "its stack update makes no new launch template version for a changed parameter")

        # 3. Graviton peers, arm64 functions, recorded failures, no Auto Scaling group.
        params = {
            "CreateBroker": "false",
            "ExternalBrokerUrl": BROKER,
            "CreatePeers": "false",
            "InstanceType": "m7g.large",
            "LambdaArchitecture": "arm64",
            "LambdaMemory": 3008,
            "StepOnFailure": "record",
            "BatchesPerPeer": 16,
            "RunName": "graviton-1",
        }
        out_b = create(cf, "peerless-b", **params)
        check_stack(clients, "peerless-b", out_b, params)
        check("peerless-b: no Auto Scaling group with CreatePeers=false", "PeerGroupName" not in out_b)

        # 4. Teardown as the runbook does it: empty the bucket, delete the stack.
        bucket = out["RunBucketName"]
        s3.put_object(Bucket=bucket, Key="runs/study1/manifest.json", Body=b"{}")
        for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        for name in ("peerless-a", "peerless-b"):
            try:
                cf.delete_stack(StackName=name)
                cf.get_waiter("stack_delete_complete").wait(StackName=name, WaiterConfig={"Delay": 1})
                check(f"teardown: {name} deleted", True)
            except botocore.exceptions.ClientError as e:
                if e.response["Error"]["Code"] != "DependencyViolation":
                    raise
                moto_gap(f"teardown: {name} deleted whole", e.response["Error"]["Message"]
                         + " (its stack deletion leaves the stack's route table behind)")
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        check("teardown: run buckets deleted", bucket not in names and out_b["RunBucketName"] not in names, names)
        functions = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
        check("teardown: functions deleted", not functions, functions)
        machines = [m["name"] for m in sfn.list_state_machines()["stateMachines"]]
        check("teardown: state machines deleted", not machines, machines)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"{gaps} checks moto cannot pass (known gaps, deploy/README.md)")
    print(f"moto: {passed} passed, {failed} failed")
    return 1 if failed else 0


def deploy(argv):
    """`check_moto.py deploy --endpoint URL [--stack NAME] [KEY=VALUE ...]`: creates the
    stack on an already running moto server (stand-in artifacts, CreateBroker=false and the
    local broker unless given), makes its state machine executable there (make_executable),
    and prints one JSON object: the stack's outputs and, by function name, each deployed
    function's memory, timeout and environment. For tests that run peers against the stack
    (peer/tests/stack.rs); checks nothing."""
    import argparse

    parser = argparse.ArgumentParser(prog="check_moto.py deploy")
    parser.add_argument("--endpoint", required=True, help="moto's endpoint, http://host:port")
    parser.add_argument("--stack", default="peerless-test")
    parser.add_argument("params", nargs="*", metavar="KEY=VALUE", help="stack parameters")
    args = parser.parse_args(argv)
    params = {"CreateBroker": "false", "ExternalBrokerUrl": BROKER, "CreatePeers": "false"}
    for item in args.params:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"parameter {item!r} is not KEY=VALUE")
        params[key] = value
    url = args.endpoint.rstrip("/")
    session = boto3.session.Session(
        aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION
    )
    c = lambda svc: session.client(svc, endpoint_url=url)  # noqa: E731
    s3, cf, lam, sfn, iam = c("s3"), c("cloudformation"), c("lambda"), c("stepfunctions"), c("iam")
    upload_artifacts(s3)
    out = create(cf, args.stack, **params)
    executable = make_executable(url, sfn, iam, out)
    if executable != out["StateMachineArn"]:
        sys.exit(f"moto's executing backend gave the state machine {executable}, "
                 f"not the stack's {out['StateMachineArn']}")
    functions = {}
    for key in ("ComputeGradientFunctionArn", "ProcessInputFunctionArn"):
        c = lam.get_function(FunctionName=fn_name(out[key]))["Configuration"]
        functions[c["FunctionName"]] = {
            "memory_mb": c["MemorySize"],
            "timeout_s": c["Timeout"],
            "environment": c.get("Environment", {}).get("Variables", {}),
        }
    json.dump({"outputs": out, "functions": functions}, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["deploy"]:
        sys.exit(deploy(sys.argv[2:]))
    sys.exit(main())
