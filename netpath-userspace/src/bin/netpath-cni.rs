//! netpath-cni: the CNI plugin `netpath`. Install it as `netpath` in a CNI
//! plugin directory; the logic lives in `netpath_userspace::cni`.

use std::{io::Read as _, process::ExitCode};

use netpath_userspace::cni::{
    self,
    error::{CniError, AGENT_FAILED, IO_FAILURE},
};

fn main() -> ExitCode {
    let env = cni::Env::from_process();
    let mut stdin = vec![];
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => Err(CniError::new(IO_FAILURE, format!("reading the network configuration from stdin: {e}"))),
        // One thread is plenty for one request, and keeps setns-free.
        Ok(_) => match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(cni::run(&env, &stdin)),
            Err(e) => Err(CniError::new(AGENT_FAILED, format!("starting the plugin's runtime: {e}"))),
        },
    };
    match outcome {
        Ok(Some(answer)) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&cni::answer_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}
