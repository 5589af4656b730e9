//! `thrombseg segment` as a user runs it: exit codes, the envelope line and the output file.

use std::ffi::OsStr;
use std::process::{Command, Output};

use ndarray::Array3;

use crate::support::archives::{member_names, read_member, valid_npz};
use crate::support::{binary, fixture, run_segment as segment, run_thrombseg, temp_dir};

fn envelope(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "no envelope on stdout; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout is not one JSON line ({e}): {stdout}"))
}

#[test]
fn segment_example_writes_masks() {
    let dir = temp_dir();
    let output_path = dir.path().join("masks.npz");

    let output = segment(&fixture("input_file_example.npz"), &output_path, &[]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let envelope = envelope(&output);
    assert_eq!(envelope["status"], "OK");
    assert_eq!(envelope["bundle"]["name"], "thrombseg-segresnet");
    assert!(envelope["stages"]["infer_3d"].as_f64().unwrap() > 0.0);
    assert!(
        envelope.get("thrombus_probability").is_none(),
        "scores only with --explain"
    );

    let bytes = std::fs::read(&output_path).unwrap();
    assert_eq!(member_names(&bytes), vec!["pred_2d", "pred_3d"]);
    for mask in ["pred_2d", "pred_3d"] {
        let mask = read_member::<u8>(&bytes, mask);
        assert_eq!(mask.shape(), &[60, 60, 61]);
        assert!(mask.iter().all(|&v| v <= 1));
    }
}

#[test]
fn segment_explain_adds_logits_and_scores() {
    let dir = temp_dir();
    let output_path = dir.path().join("explained.npz");

    let output = segment(&fixture("golden/small.input.npz"), &output_path, &["--explain"]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let envelope = envelope(&output);
    let probability = envelope["thrombus_probability"].as_f64().unwrap();
    let confidence = envelope["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&probability), "{probability}");
    assert!((0.5..=1.0).contains(&confidence), "{confidence}");

    let bytes = std::fs::read(&output_path).unwrap();
    assert_eq!(
        member_names(&bytes),
        vec![
            "confidence",
            "logits_2d",
            "logits_3d",
            "pred_2d",
            "pred_3d",
            "thrombus_probability"
        ]
    );
    assert_eq!(read_member::<f32>(&bytes, "logits_3d").shape(), &[2, 40, 36, 20]);
    let stored = read_member::<f32>(&bytes, "confidence").sum();
    assert!((f64::from(stored) - confidence).abs() < 1e-6);
}

#[test]
fn segment_bad_input_exits_2_without_output() {
    let dir = temp_dir();
    let input = dir.path().join("flat.npz");
    std::fs::write(&input, valid_npz(&Array3::<i16>::zeros((4, 4, 4)), 250.0, -1.0)).unwrap();
    let output_path = dir.path().join("never.npz");

    let output = segment(&input, &output_path, &[]);

    assert_eq!(output.status.code(), Some(2));
    let envelope = envelope(&output);
    assert_eq!(envelope["status"], "ERROR");
    assert_eq!(envelope["error"]["kind"], "bad_input");
    assert!(envelope["error"]["message"].as_str().unwrap().contains("non_mdc_var"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("flat.npz")],
        "no output, not even a partial file"
    );
}

#[test]
fn segment_without_onnxruntime_says_how_to_get_it() {
    let dir = temp_dir();

    let output = Command::new(binary())
        .arg("segment")
        .arg(fixture("input_file_example.npz"))
        .arg(dir.path().join("out.npz"))
        .arg("--onnxruntime")
        .arg(dir.path().join("missing/libonnxruntime.so"))
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--onnxruntime"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn segment_with_tampered_bundle_fails_hash_check() {
    let dir = temp_dir();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(fixture("models")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let mut onnx = std::fs::read(bundle.join("model_2d.onnx")).unwrap();
    let last = onnx.len() - 1;
    onnx[last] ^= 1;
    std::fs::write(bundle.join("model_2d.onnx"), onnx).unwrap();

    let output = segment(
        &fixture("input_file_example.npz"),
        &dir.path().join("out.npz"),
        &["--bundle", bundle.to_str().unwrap()],
    );

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("model_2d.onnx has SHA-256"), "{stderr}");
}

#[test]
fn bench_reports_stages_work_and_memory() {
    let input = fixture("golden/small.input.npz");
    let output = run_thrombseg([
        OsStr::new("bench"),
        "--repeat".as_ref(),
        "2".as_ref(),
        "--json".as_ref(),
        input.as_ref(),
    ]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["shape"], serde_json::json!([40, 36, 20]));
    assert_eq!(report["runs"], 2);
    assert_eq!(report["branch_3d"]["windows"], 1, "one padded 3-D window");
    assert_eq!(report["branch_2d"]["windows"], 20, "one window per axial slice");
    let gflop_3d = report["branch_3d"]["gflop"].as_f64().unwrap();
    assert!((gflop_3d - 146.23).abs() < 0.01, "{gflop_3d}");
    assert!(report["branch_3d"]["gflop_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["median_seconds"]["infer_3d"].as_f64().unwrap() > 0.0);
    let fraction = report["outside_networks_fraction"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&fraction), "{fraction}");
    assert!(
        report["peak_rss_bytes"].as_u64().unwrap() > 50_000_000,
        "the networks alone need more"
    );
}

#[test]
fn unavailable_provider_stops_with_clear_error() {
    let dir = temp_dir();
    let output_path = dir.path().join("masks.npz");

    let output = segment(
        &fixture("golden/small.input.npz"),
        &output_path,
        &["--execution-providers", "cuda,cpu"],
    );

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("execution provider cuda failed to register"),
        "{stderr}"
    );
    assert!(stderr.contains("onnxruntime-gpu"), "{stderr}");
    assert!(!output_path.exists(), "no output after a failed start");
}

#[test]
fn provider_fallback_runs_on_cpu() {
    let dir = temp_dir();
    let output_path = dir.path().join("masks.npz");

    let output = segment(
        &fixture("golden/small.input.npz"),
        &output_path,
        &["--execution-providers", "tensorrt,cuda", "--allow-provider-fallback"],
    );

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("execution provider left out"), "{stderr}");
    assert!(stderr.contains("tensorrt"), "{stderr}");
    assert_eq!(envelope(&output)["status"], "OK");
}

#[test]
fn provider_list_with_cpu_first_is_rejected() {
    let dir = temp_dir();

    let output = segment(
        &fixture("golden/small.input.npz"),
        &dir.path().join("masks.npz"),
        &["--execution-providers", "cpu,cuda"],
    );

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cpu must come last"), "{stderr}");
}

#[test]
fn bench_profile_lists_operators() {
    let input = fixture("golden/small.input.npz");
    let output = run_thrombseg([
        OsStr::new("bench"),
        "--repeat".as_ref(),
        "1".as_ref(),
        "--json".as_ref(),
        "--profile".as_ref(),
        input.as_ref(),
    ]);

    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 2, "a report and a profile: {stdout}");
    assert_eq!(lines[0]["execution_provider"], "cpu");
    assert_eq!(lines[0]["rss_after_runs_bytes"].as_array().unwrap().len(), 1);
    for network in ["3d", "2d"] {
        let operators = lines[1]["profile"][network].as_array().unwrap();
        assert_eq!(
            operators[0]["operator"], "Conv",
            "{network}: convolutions take the most time"
        );
        let shares: f64 = operators.iter().map(|op| op["share"].as_f64().unwrap()).sum();
        assert!((shares - 1.0).abs() < 1e-6, "{network}: shares sum to {shares}");
    }
}

#[test]
fn several_inputs_go_to_output_dir() {
    let dir = temp_dir();
    let bad = dir.path().join("nan.npz");
    std::fs::write(&bad, valid_npz(&Array3::from_elem((4, 4, 4), f32::NAN), 40.0, 400.0)).unwrap();
    let good = fixture("golden/small.input.npz");

    let output = run_thrombseg([
        OsStr::new("segment"),
        good.as_ref(),
        bad.as_ref(),
        "--output-dir".as_ref(),
        dir.path().as_ref(),
    ]);

    assert_eq!(output.status.code(), Some(2), "one input cannot be segmented");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[1/2] segmenting"), "{stderr}");
    assert!(stderr.contains("[2/2] segmenting"), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let statuses: Vec<String> = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["status"].to_string())
        .collect();
    assert_eq!(statuses, vec![r#""OK""#, r#""ERROR""#]);
    assert!(dir.path().join("small.input_masks.npz").is_file());
    assert!(
        !dir.path().join("nan_masks.npz").exists(),
        "no output for the bad input"
    );
}

#[test]
fn three_paths_without_output_dir_are_rejected() {
    let output = Command::new(binary())
        .args(["segment", "a.npz", "b.npz", "c.npz"])
        .output()
        .unwrap();

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--output-dir"), "{stderr}");
}

#[test]
fn output_over_input_is_rejected() {
    let dir = temp_dir();
    let input = dir.path().join("case.npz");
    std::fs::copy(fixture("golden/small.input.npz"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();

    let output = segment(&input, &input, &[]);

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is the input file"), "{stderr}");
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input is untouched");
}

#[test]
fn equal_names_in_output_dir_are_rejected() {
    let dir = temp_dir();
    for folder in ["a", "b"] {
        std::fs::create_dir(dir.path().join(folder)).unwrap();
        std::fs::copy(
            fixture("golden/small.input.npz"),
            dir.path().join(folder).join("case.npz"),
        )
        .unwrap();
    }

    let first = dir.path().join("a/case.npz");
    let second = dir.path().join("b/case.npz");
    let output = run_thrombseg([
        OsStr::new("segment"),
        first.as_ref(),
        second.as_ref(),
        "--output-dir".as_ref(),
        dir.path().as_ref(),
    ]);

    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("would both write"), "{stderr}");
    assert!(!dir.path().join("case_masks.npz").exists());
}
