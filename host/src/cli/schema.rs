//! `weir schema plan|apply`: the declared tables against the sink.

use super::*;

pub(super) async fn schema(path: &Path, apply: bool) -> Result<ExitCode> {
    let loaded = config::load(path)?;
    let sink = weir::worker::connect_sink(&loaded).await?;
    let plan = sink.plan(&loaded.tables).await?;
    if plan.statements.is_empty() {
        println!(
            "-- {}: the tables match the configuration; nothing to do",
            sink.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("-- {}", sink.describe());
    for statement in &plan.statements {
        println!("{statement};");
    }
    if apply {
        sink.apply(&plan).await?;
        println!("-- applied {} statements", plan.statements.len());
    } else {
        println!(
            "-- not applied; run `weir schema apply -c {}` to apply",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
