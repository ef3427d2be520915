//! `applctl passwd`: reads a password and prints its argon2id hash, for
//! `api.users.<name>.password_hash`. The password comes from the terminal (asked twice,
//! not echoed) or from the first line of stdin, never from the command line, where other
//! users could read it in the process list and it would stay in the shell history.

use std::io::{BufRead as _, IsTerminal as _};

use appliance::accounts::password;

use super::CliError;

pub fn run() -> Result<(), CliError> {
    let stdin = std::io::stdin();
    let pw = if stdin.is_terminal() {
        let read = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map_err(|e| CliError::Failed(format!("reading the password: {e}")))
        };
        let first = read("New password: ")?;
        if read("Again: ")? != first {
            return Err(CliError::Invalid(
                "the two passwords differ; run applctl passwd again".into(),
            ));
        }
        first
    } else {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Failed(format!("reading the password from stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    let hash = password::hash(&pw).map_err(|e| match e {
        password::HashError::Empty | password::HashError::TooShort => {
            CliError::Invalid(e.to_string())
        }
        password::HashError::Random(_) | password::HashError::Argon2(_) => {
            CliError::Failed(e.to_string())
        }
    })?;
    println!("{hash}");
    Ok(())
}
