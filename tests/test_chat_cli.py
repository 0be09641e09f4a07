"`ft generate` and `ft chat` as the real executable: an answer streamed to stdout, a scripted chat on stdin, one real-model answer."
import re
import subprocess



def ft(exe, env, *args, stdin=None, timeout=300):
    return subprocess.run([exe, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def test_generate_tiny(ft_exe, ft_env):
    r = ft(ft_exe, ft_env, "generate", "tiny", "hello", "--max-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and r.stdout.endswith("\n"), r.stdout  # the answer, then a newline
    r = ft(ft_exe, ft_env, "generate", "tiny", "hello", "--adapter", "no-such-run")
    assert r.returncode == 1 and r.stderr.startswith("Error: ") and "no-such-run" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_chat_tiny(ft_exe, ft_env):
    script = "/system Be brief\nWhat is 2 plus 3?\n/reset\nhello\n/exit\n"
    r = ft(ft_exe, ft_env, "chat", "tiny", "--max-tokens", "4", stdin=script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Commands: /reset"), r.stdout
    # prompt, ack; prompt, reply; prompt, ack; prompt, reply; prompt (for /exit), nothing more
    m = re.fullmatch(r"Commands: [^\n]*\n> \(system prompt set\)\n> (.+)\n> \(conversation reset\)\n> (.+)\n> ", r.stdout, re.S)
    assert m, r.stdout
    assert m[1].strip() and m[2].strip(), r.stdout  # it printed both replies
    r = ft(ft_exe, ft_env, "chat", "tiny", "--max-tokens", "2", stdin="hello\n")  # end of input ends the chat too
    assert r.returncode == 0 and r.stdout.endswith("> \n"), (r.stdout, r.stderr)


def test_generate_real_model(ft_exe, ft_env):
    r = ft(ft_exe, ft_env, "generate", "smollm2-135m", "What is the capital of France?", "--max-tokens", "12", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout, r.stdout
