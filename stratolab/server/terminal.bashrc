# The start-up file of JupyterLab terminals (see stratolab/server/terminal.py): what a login shell reads,
# then the environment the server runs in (STRATOLAB_ENV_BIN) first on PATH. Debian's /etc/profile sets
# PATH anew, without that environment: python, pip and stratolab were not found in a terminal.
if [ -r /etc/profile ]; then . /etc/profile; fi
for __stratolab_rc in ~/.bash_profile ~/.bash_login ~/.profile; do
  if [ -r "$__stratolab_rc" ]; then . "$__stratolab_rc"; break; fi
done
unset __stratolab_rc
if [ -n "${STRATOLAB_ENV_BIN:-}" ]; then
  case ":$PATH:" in
    *":$STRATOLAB_ENV_BIN:"*) ;;
    *) PATH="$STRATOLAB_ENV_BIN:$PATH"; export PATH ;;
  esac
fi
unset STRATOLAB_ENV_BIN
