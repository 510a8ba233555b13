// Skeleton: an Android app that trains an edgetl ONNX export on the device.
plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.edgetl.trainer"
    compileSdk = 34
    defaultConfig {
        applicationId = "dev.edgetl.trainer"
        minSdk = 24
        targetSdk = 34
    }
    // the .onnx files and the checkpoint must stay uncompressed to be read in place
    androidResources { noCompress += listOf("onnx", "ckpt", "") }
}

dependencies {
    // ONNX Runtime's on-device training API for Android (matches the 1.19 desktop runtime edgetl exports for)
    implementation("com.microsoft.onnxruntime:onnxruntime-training-android:1.19.2")
}
