"""Your own bot's image: a crate outside the workspace (docs/deploy.md's Cargo.toml, the
README's bot) built by deploy/docker/bot.Dockerfile's build steps, run as a script (the
``outside_bot`` fixture in conftest.py). The chart contract test then starts the rendered
worker with this binary (test_contract.py)."""

import subprocess

from conftest import ROOT, fenced_after


def test_no_way_to_build_your_bots_image_from_a_crate_outside_the_workspace(outside_bot):
    # worker.Dockerfile built a package of the tgpipe workspace only.
    assert outside_bot.is_file()
    help_text = subprocess.run([str(outside_bot), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("run", "provision", "webhook", "dlq"):
        assert f"  {command}" in help_text, help_text


def test_the_bots_cargo_toml_uses_path_dependencies_not_git_urls_that_do_not_exist():
    toml = fenced_after(ROOT / "docs" / "deploy.md", "bot-cargo-toml")
    assert "git" not in toml
    for line in toml.splitlines():
        if line.startswith("tgpipe"):
            assert "path = " in line or "version = " in line, line
