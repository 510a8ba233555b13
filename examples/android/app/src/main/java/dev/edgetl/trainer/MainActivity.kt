package dev.edgetl.trainer

import android.app.Activity
import android.os.Bundle
import android.widget.TextView
import java.io.File
import kotlin.concurrent.thread

/** Copies the exported artifacts out of assets, trains a few steps on placeholder data, shows the loss. */
class MainActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val view = TextView(this).also { setContentView(it) }
        thread {
            val dir = File(filesDir, "edgetl").apply { mkdirs() }
            for (name in assets.list("edgetl").orEmpty()) {
                assets.open("edgetl/$name").use { input -> File(dir, name).outputStream().use { input.copyTo(it) } }
            }
            val resolution = 96 // manifest.json: input.shape[3]
            EdgeTLTrainer(dir, resolution, learningRate = 1e-3f).use { trainer ->
                val batch = 8
                // Replace with real, preprocessed camera or gallery images and their labels.
                val images = FloatArray(batch * 3 * resolution * resolution)
                val labels = LongArray(batch) { (it % 5).toLong() }
                for (step in 1..10) {
                    val loss = trainer.step(images, labels)
                    runOnUiThread { view.text = "step $step loss $loss" }
                }
            }
        }
    }
}
