#!/usr/bin/env python
"""Manage the users file of a P2SAM server started with ``serve.py --auth-users FILE``.

Usage::

    python apps/p2sam/manage_users.py FILE add NAME [--role user] [--role annotator] [--password-stdin]
    python apps/p2sam/manage_users.py FILE remove NAME
    python apps/p2sam/manage_users.py FILE list

``add`` asks for the password twice (or reads one line from standard input with
``--password-stdin``) and stores its scrypt hash, never the password; adding an existing name
replaces its password and roles. Roles (MONAI Label's), each including the ones before it:
``user`` runs P2SAM (the Slicer module needs only this), ``annotator`` also writes into the
datastore, ``reviewer``, ``admin`` also deletes datastore entries and sees everyone's jobs. The file is created readable by its owner
only; a running server reads it again when it changes, so changes count from the next sign-in
(a removed user's tokens stop working at once).
"""
import argparse
import getpass
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from p2sam_server.auth import ROLE_NAMES, hash_password, read_users, write_users  # noqa: E402
from p2sam_server.checks import ID_PATTERN  # noqa: E402

MIN_PASSWORD = 10


def main(argv=None) -> int:
    parser = argparse.ArgumentParser("manage_users.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="the users file (created if missing)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add a user, or change a user's password and roles")
    add.add_argument("name")
    add.add_argument("--role", action="append", choices=ROLE_NAMES, help="repeat for several (default: user)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    remove = sub.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    sub.add_parser("list", help="list the users and their roles")
    args = parser.parse_args(argv)

    users = read_users(args.file) if os.path.exists(args.file) else {}
    if args.command == "list":
        for name in sorted(users):
            print(f"{name}: {', '.join(users[name].get('roles') or ['user'])}")
        return 0
    if args.command == "remove":
        if users.pop(args.name, None) is None:
            print(f"no user {args.name!r} in {args.file}", file=sys.stderr)
            return 1
        write_users(args.file, users)
        return 0
    if not ID_PATTERN.match(args.name) or ".." in args.name:
        print(f"user name {args.name!r}: use letters, digits, '_', '-' or '.'", file=sys.stderr)
        return 2
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ; nothing was changed", file=sys.stderr)
            return 1
    if len(password) < MIN_PASSWORD:
        print(f"the password must have at least {MIN_PASSWORD} characters; nothing was changed", file=sys.stderr)
        return 2
    users[args.name] = {"password": hash_password(password), "roles": sorted(set(args.role or ["user"]))}
    write_users(args.file, users)
    print(f"{args.name}: {', '.join(users[args.name]['roles'])} ({args.file})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
