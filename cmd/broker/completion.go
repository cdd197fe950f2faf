package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// The scripts ask the binary itself what may come next: with the app's
// EnableBashCompletion, urfave/cli answers a command line ending in
// --generate-bash-completion with the subcommands of the deepest command named,
// or, when the word before it starts with '-', with that command's flags that
// match it. So the scripts never go stale when a command or flag is added.
// Where nothing is suggested (a flag's value such as --config FILE), the shell's
// own file completion takes over.

const bashCompletion = `# bash completion for broker (salt-broker). Install:
#   broker completion bash > /etc/bash_completion.d/broker
# or add to ~/.bashrc:  source <(broker completion bash)
_broker() {
	local cur=${COMP_WORDS[COMP_CWORD]}
	local -a args=("${COMP_WORDS[@]:1:COMP_CWORD-1}")
	# A word being typed that starts with '-' asks for flags: it goes last.
	if [[ $cur == -* ]]; then
		args+=("$cur")
	fi
	local IFS=$'\n'
	COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" "${args[@]}" --generate-bash-completion 2>/dev/null)" -- "$cur"))
}
complete -o bashdefault -o default -F _broker broker
`

// 0=zsh in the binary's environment makes urfave/cli print each subcommand as
// name:usage, the form _describe shows with its description.
const zshCompletion = `#compdef broker
# zsh completion for broker (salt-broker). Install:
#   broker completion zsh > "${fpath[1]}/_broker"   (then restart zsh)
# or add to ~/.zshrc after compinit:  source <(broker completion zsh)
_broker() {
	local cur=${words[CURRENT]}
	local -a args opts
	args=("${(@)words[2,CURRENT-1]}")
	# A word being typed that starts with '-' asks for flags: it goes last.
	if [[ $cur == -* ]]; then
		args+=("$cur")
	fi
	opts=("${(@f)$(env 0=zsh ${words[1]} "${args[@]}" --generate-bash-completion 2>/dev/null)}")
	if [[ -n ${opts[1]} ]]; then
		_describe 'broker' opts
	else
		_files
	fi
}
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
	_broker "$@"
else
	compdef _broker broker
fi
`

func completionCommand() *cli.Command {
	script := func(name, text string) *cli.Command {
		return &cli.Command{
			Name:      name,
			Usage:     "print the " + name + " completion script",
			ArgsUsage: " ",
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return usagef("completion %s takes no arguments, got %q", name, c.Args().Slice())
				}
				if _, err := fmt.Fprint(c.App.Writer, text); err != nil {
					return fmt.Errorf("write the %s completion script: %w", name, err)
				}
				return nil
			},
		}
	}
	return &cli.Command{
		Name:  "completion",
		Usage: "print a shell completion script (bash or zsh)",
		Description: `  broker completion bash > /etc/bash_completion.d/broker
  broker completion zsh  > "${fpath[1]}/_broker"
The package installs both.`,
		Subcommands: []*cli.Command{script("bash", bashCompletion), script("zsh", zshCompletion)},
	}
}
