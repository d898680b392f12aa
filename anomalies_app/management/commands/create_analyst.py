"""`manage.py create_analyst`: a person who triages anomalies in the admin (docs/design.md, "Roles")."""

from __future__ import annotations

import getpass
import os
from typing import Any

from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

PASSWORD_VARIABLE = "ANALYST_PASSWORD"


class Command(BaseCommand):
    help = (
        "Create a staff user in the 'analysts' group (or 'rule editors' with --rule-editor), or put an "
        f"existing one there. The password is asked for, or read from {PASSWORD_VARIABLE} with --no-input."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--rule-editor", action="store_true", help="May also edit the rules.")
        parser.add_argument(
            "--no-input", action="store_false", dest="interactive", help=f"Read the password from {PASSWORD_VARIABLE}."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        group_name = "rule editors" if options["rule_editor"] else "analysts"
        try:
            group = Group.objects.get(name=group_name)
        except Group.DoesNotExist as missing:
            raise CommandError(f"group {group_name!r} is missing: run `manage.py migrate` first") from missing
        username = options["username"]
        user = User.objects.filter(username=username).first() or User(username=username, email=options["email"])
        password = self._password(user, interactive=options["interactive"])
        with transaction.atomic():
            user.is_staff = True
            if password is not None:
                user.set_password(password)
            user.save()
            user.groups.add(group)
        self.stdout.write(f"{username} is in {group_name!r}: log in at /admin/ to triage anomalies.")

    def _password(self, user: User, *, interactive: bool) -> str | None:
        """A new user's password (an existing user keeps theirs unless one is given)."""
        password = os.environ.get(PASSWORD_VARIABLE, "")
        if not password and interactive:
            password = getpass.getpass(f"Password for {user.username}: ")
            if password != getpass.getpass("Password (again): "):
                raise CommandError("the two passwords differ")
        if not password:
            if user.pk is not None:
                return None
            raise CommandError(f"a new user needs a password: type it, or set {PASSWORD_VARIABLE} with --no-input")
        try:
            validate_password(password, user)
        except ValidationError as weak:
            raise CommandError("password: " + " ".join(weak.messages)) from weak
        return password
